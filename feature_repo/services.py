"""One feature service per view, named like it: what a probe consumes, recorded in its MLflow run."""

from feast import FeatureService
from on_demand import ON_DEMAND
from views import VIEWS

SERVICES = {
    name: FeatureService(name=name, features=[view], tags=dict(view.tags), description=f"all features of {name}")
    for name, view in {**VIEWS, **ON_DEMAND}.items()
}
globals().update(SERVICES)  # feast apply collects module attributes
