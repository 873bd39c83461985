-- One row per consenting prediction of a time slice, with its latest feedback, audit columns and
-- JSONB features, in no particular order. `excluded` says why a prediction is left out;
-- `feedback_excluded` why its answer gives no training label (a "wrong" without a usable
-- correction: it stays a negative answer, the row stays unlabelled); `answers` how many
-- answers it got (the older ones are duplicates).
--
-- Each prediction is joined to its latest answer up to the horizon (ties broken by id), read in
-- index order. Answers are read from the slice's start on: an answer never precedes its
-- prediction (clock skew aside). A "wrong" without a usable correction keeps its prediction and
-- its answer (a negative everywhere), unlabelled: a correction only adds a training label. OFFSET 0 keeps each level a level: flattened, every use of `reason` would compute
-- `label` and `answer` again.
SELECT p.id, p.created_at, p.model_version, p.answer AS predicted_label, p.confidence, p.latency_ms,
       p.input_uri, p.user_id,
       p.is_correct,
       CASE WHEN p.reason IS NULL THEN p.corrected_label END AS corrected_label,
       p.comment,
       p.feedback_at,
       CASE WHEN p.reason IS NULL THEN p.label END AS label,
       CASE
           WHEN p.confidence IS NOT NULL AND NOT (p.confidence BETWEEN 0 AND 1) THEN 'confidence_out_of_range'
           -- PostgreSQL's NaN equals NaN: one such latency would make every latency figure NaN.
           WHEN p.latency_ms IN ('NaN', 'Infinity', '-Infinity') THEN 'non_finite_latency'
           WHEN p.answer IS NULL THEN 'null_label'
           WHEN {answer_unknown} THEN 'unknown_label'
       END AS excluded,
       p.reason AS feedback_excluded,
       p.answers,
       p.features
FROM (
    SELECT p.*,
           CASE
               WHEN p.is_correct IS NULL THEN NULL
               WHEN p.label IS NULL THEN 'no_correction'
               WHEN {label_unknown} THEN 'unknown_correction'
           END AS reason
    FROM (
        SELECT p.*, CASE WHEN p.is_correct THEN p.answer ELSE nullif(btrim(p.corrected_label), '') END AS label
        FROM (
            SELECT p.id, p.created_at, p.model_version, p.confidence, p.latency_ms, p.input_uri, p.user_id,
                   p.features, coalesce(nullif(btrim(p.predicted_label), ''), p.predicted_value::text) AS answer,
                   f.is_correct, f.corrected_label, f.comment, f.created_at AS feedback_at, f.answers
            FROM {predictions} p
            LEFT JOIN (
                SELECT DISTINCT ON (prediction_id)
                       prediction_id, is_correct, corrected_label, comment, created_at,
                       count(*) OVER (PARTITION BY prediction_id ORDER BY created_at DESC, id DESC
                                     ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS answers
                FROM {feedback}
                WHERE created_at > {answers_from} AND created_at <= {horizon}
                ORDER BY prediction_id, created_at DESC, id DESC
            ) f ON f.prediction_id = p.id
            WHERE p.model_name = {model} AND p.consent
              AND p.created_at > {start} AND p.created_at <= {end}
            OFFSET 0
        ) p
        OFFSET 0
    ) p
    OFFSET 0
) p
