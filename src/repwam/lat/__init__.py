"""repwam.lat: the latent action tokenizer (stage [2]): IDM ℓ_t = q(z_t, z_{t+1}), FDM ẑ_{t+1} = K_t z_t + δ_t."""

from repwam.lat.model import (
    ForwardDynamics,
    InverseDynamics,
    LatentActionTokenizer,
    LATConfig,
    copy_last_error,
)

__all__ = ["ForwardDynamics", "InverseDynamics", "LATConfig", "LatentActionTokenizer", "copy_last_error"]
