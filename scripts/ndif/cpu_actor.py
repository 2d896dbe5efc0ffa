"""A CPU model actor for ndif 0.1.2, so the real NDIF server runs on a machine without a GPU.

ndif's ``BaseModelDeployment`` loads weights onto the GPUs the controller assigned and calls CUDA when
it cleans up after a request.  This subclass overrides exactly those two steps: it loads the model on
the CPU (``HuggingFaceModel.from_model_key``, as ndif does, without a device) and cleans up without
CUDA.  Everything else — deserializing requests, running them, errors, results — is ndif's own code.

Ray imports this module in its workers: the launcher puts this folder (and only this folder) on their
``PYTHONPATH`` and names ``cpu_actor.CPUModelActor`` in ``NDIF_MODEL_IMPORT_PATH``.  It runs in the
server's virtualenv, which does not have constraintdsl.
"""

import gc
import logging
from typing import Any

import ray
from ndif.services.ray.deployments.modeling.base import BaseModelDeployment
from nnsight.modeling.huggingface import HuggingFaceModel

logger = logging.getLogger("ndif")


class CPUModelDeployment(BaseModelDeployment):
    """ndif's model deployment with the weights on the CPU."""

    #: parking a replica moves weights GPU -> CPU; there is nothing to move here
    CACHEABLE = False

    def load_from_disk(self) -> Any:
        """Load the checkpoint named by the model key on the CPU, in the deployment's dtype."""
        model = HuggingFaceModel.from_model_key(self.model_key, dispatch=True, dtype=self.dtype_name, **self.kwargs)
        model._module.requires_grad_(False)
        logger.info(f"Loaded {self.model_key} on the CPU")
        return model

    def cleanup(self) -> None:
        """Per-request cleanup, as ndif's but without CUDA calls."""
        self.kill_switch.clear()
        self.kill_reason = None
        self.execution_ident = None
        self.model.interleaver.cancel()
        gc.collect()


CPUModelActor = ray.remote(num_cpus=1, max_restarts=0)(CPUModelDeployment)
