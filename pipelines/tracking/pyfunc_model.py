"""The file MLflow runs to build PGNet's pyfunc model ("models from code"): each logged model holds a copy,
and loading it imports `pipelines.tracking.pyfunc` from the installed package. No pickle in the model."""
from mlflow.models import set_model

from pipelines.tracking.pyfunc import PGNetPeople

set_model(PGNetPeople())
