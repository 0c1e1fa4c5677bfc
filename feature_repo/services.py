"""One feature service per view, named like it: what a probe consumes, recorded in its MLflow run."""

from feast import FeatureService, FeatureView


def feature_service(view: FeatureView) -> FeatureService:
    return FeatureService(name=view.name, features=[view], tags=dict(view.tags),
                          description=f"all features of {view.name}")
