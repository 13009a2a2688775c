"""Mixture-of-experts layers for image classifiers (arXiv 2411.18322).

``MoE`` (layer.py) ties together the routers (router.py), the stacked expert MLPs (experts.py), the sort-based
dispatch with grouped matmuls (dispatch.py) and the auxiliary losses (balancing.py).
"""

from litlab.models.moe.balancing import (
    cv_squared,
    importance_loss,
    load_balance_loss,
    load_loss,
    z_loss,
)
from litlab.models.moe.dispatch import (
    DispatchPlan,
    expert_capacity,
    expert_mlp,
    plan_dispatch,
)
from litlab.models.moe.experts import Experts
from litlab.models.moe.layer import MoE, RouterStats, collect_aux_loss, moe_layers
from litlab.models.moe.router import (
    CosineRouter,
    LinearRouter,
    MLPRouter,
    Routing,
    build_router,
    route,
)

__all__ = [
    "CosineRouter",
    "DispatchPlan",
    "Experts",
    "LinearRouter",
    "MLPRouter",
    "MoE",
    "RouterStats",
    "Routing",
    "build_router",
    "collect_aux_loss",
    "cv_squared",
    "expert_capacity",
    "expert_mlp",
    "importance_loss",
    "load_balance_loss",
    "load_loss",
    "moe_layers",
    "plan_dispatch",
    "route",
    "z_loss",
]
