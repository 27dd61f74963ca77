"""stresnet: CNNs compressed by low-rank tensor decomposition (Tucker-2, TT, low-rank + sparse)."""
from .plan import Plan, PlanError, build, compress, load_weights, plan_of
from .zoo import models as _zoo_models  # registers the zoo with timm  # noqa: F401

__version__ = "0.1.0"

__all__ = ["Plan", "PlanError", "build", "compress", "load_weights", "plan_of", "profile", "__version__"]


def __getattr__(name: str):
    # cost.profile pulls in torch.fx; load it on first use.
    if name == "profile":
        from .cost import profile

        return profile
    raise AttributeError(name)
