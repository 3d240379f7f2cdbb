"""The code of a harness MLflow model ("models from code": MLflow runs this file when it loads the model, so
nothing is unpickled). See harness/serving.py."""

import mlflow.models

from harness.serving import HarnessModel

mlflow.models.set_model(HarnessModel())
