-- 1: what the serving app writes (predictions, feedback) and what the loop records (runs, deployments).
CREATE TABLE predictions (
    id              text PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    model_name      text NOT NULL,
    model_version   text NOT NULL,
    features        jsonb NOT NULL DEFAULT '{}'::jsonb,  -- summary features, never raw images
    input_uri       text,                                -- where the raw input lies, if kept
    predicted_label text,
    confidence      double precision,
    latency_ms      double precision,
    user_id         text,                                -- pseudonymous
    consent         boolean NOT NULL DEFAULT true
);
CREATE INDEX predictions_model_time ON predictions (model_name, created_at);
-- No foreign key: feedback for an unknown prediction is counted and excluded, not refused.
CREATE TABLE feedback (
    id              bigserial PRIMARY KEY,
    prediction_id   text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    is_correct      boolean NOT NULL,
    corrected_label text,
    comment         text
);
CREATE INDEX feedback_prediction ON feedback (prediction_id, created_at);
CREATE TABLE retrain_runs (
    id          bigserial PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    model_name  text NOT NULL,
    run_name    text,
    retrain     boolean NOT NULL,
    reasons     jsonb NOT NULL DEFAULT '[]'::jsonb,
    stats       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE TABLE deployments (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    model_name      text NOT NULL,
    version         text NOT NULL,
    action          text NOT NULL,
    traffic_percent integer NOT NULL,
    reason          text NOT NULL DEFAULT '',
    details         jsonb NOT NULL DEFAULT '{}'::jsonb
);
