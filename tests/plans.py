"""A plan that uses every factorised layer type on timm resnet18, shared by the plan and deploy tests.

tucker2 (stem, 3x3, strided 1x1 downsample), 3-core tt, 5-core tt (reshapes), low-rank + sparse
(masked conv), svd conv and svd fc.
"""
MIXED_LAYERS = {
    "conv1": {"type": "tucker2", "ranks": [16, 3]},
    "layer1.0.conv1": {"type": "tucker2", "ranks": [16, 24]},
    "layer2.0.downsample.0": {"type": "tucker2", "ranks": [32, 16]},
    "layer3.1.conv2": {"type": "tt", "ranks": [32, 48]},
    "layer4.0.conv1": {"type": "tt", "ranks": [8, 16, 32, 8], "factors": [[16, 32], [16, 16]]},
    "layer4.1.conv1": {"type": "lrs", "ranks": [64, 64], "density": 0.05},
    "layer4.1.conv2": {"type": "svd", "rank": 96},
    "fc": {"type": "svd", "rank": 8},
}
