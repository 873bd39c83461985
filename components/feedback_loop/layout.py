"""The model store's layout: the names every stage reads and writes, defined once.

    <store>/<model>/<version>/
        saved_model/1/                  the SavedModel TensorFlow Serving loads (and saved_model/_COMPLETE)
        model.keras                     the Keras model (fine-tuning, evaluation, our predictor)
        lineage.json                    family, spec, classes, metrics, data hashes
        training_data.parquet           the rows it was trained on (the drift reference)
        reference_predictions.parquet   its predictions on its validation rows
        test_data.parquet               the guard set it was checked on
        evidence/drift.md, evaluation.md
        _COMPLETE                       written last: a version without it is incomplete
    <store>/<model>/rollout.json        the local target's rollout state
"""

MODEL_FILE = "model.keras"
LINEAGE_FILE = "lineage.json"
SAVED_MODEL_DIR = "saved_model"
SERVING_VERSION = "1"  # TF Serving (KServe's tensorflow runtime) loads numbered version dirs
TRAINING_DATA_FILE = "training_data.parquet"
REFERENCE_PREDICTIONS_FILE = "reference_predictions.parquet"
TEST_DATA_FILE = "test_data.parquet"
EVIDENCE_DIR = "evidence"
EVIDENCE_FILES = ("drift.md", "evaluation.md")
COMPLETE_MARKER = "_COMPLETE"
ROLLOUT_FILE = "rollout.json"
