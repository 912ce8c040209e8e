"""SimCLR ResNet-50 (Chen et al. 2020) from VISSL's model zoo, the encoder of the
released ``simclr`` RCDM model.

``head`` is the projection as RCDM computed it: Linear(2048, 2048) - ReLU -
Linear(2048, 128), without normalisation. The ReLU has no weights: VISSL's MLP head
of the time applied it after the first layer, and RCDM put it back by hand.
"""

from __future__ import annotations

from torch import nn

from rcdm_cli.encoders.nets import ResNetWithHeads, mlp, resnet50_trunk
from rcdm_cli.plugin import BuildRequest, EncoderSpec, Layer, WeightSource, hookimpl, load_strict
from rcdm_plugins._vissl import MODEL_ZOO, VISSL_LICENSE, vissl_state

VISSL = WeightSource(
    name="vissl",
    url=f"{MODEL_ZOO}/simclr_rn50_1000ep_simclr_8node_resnet_16_07_20.afe428c7/model_final_checkpoint_phase999.torch",
    filename="simclr_rn50_1000ep_model_final_checkpoint_phase999.torch",  # the cache is keyed by file name
    license=VISSL_LICENSE,
    description="VISSL model zoo, 1000 ImageNet epochs on 8 nodes, the weights RCDM used",
)

LAYERS = {
    "backbone": Layer(2048, "global-average-pooled layer4 features"),
    "layer3": Layer(1024, "global-average-pooled layer3 features"),
    "head": Layer(128, "projection output (Linear-ReLU-Linear, not normalised), as RCDM computed it"),
}

# VISSL's two heads "<block>.clf.0" are the Linear layers 0 and 2 of the head's
# nn.Sequential (1 is the ReLU).
VISSL_HEAD_LAYERS = {"0.clf.0": 0, "1.clf.0": 2}


def projection() -> nn.Sequential:
    return mlp([2048, 2048, 128])


def build_simclr(request: BuildRequest) -> nn.Module:
    path = request.weights_path
    state = vissl_state(path, VISSL_HEAD_LAYERS)
    net = ResNetWithHeads(resnet50_trunk(), heads={"head": projection()})
    return load_strict(net, state, str(path))


@hookimpl
def register_encoders(register):
    register(
        EncoderSpec(
            name="simclr",
            description="SimCLR ResNet-50 (contrastive, ImageNet), VISSL model zoo",
            build=build_simclr,
            layers=dict(LAYERS),
            weights=(VISSL,),
        )
    )
