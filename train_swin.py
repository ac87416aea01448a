"""Train the Swin Transformer detector (`swin`). All options: python train_swin.py --help

Example: python train_swin.py --data-dir ../shared/datasets/dfdc-faces --epochs 30
"""
import sys

from training_engine import main

if __name__ == "__main__":
    main("swin", sys.argv[1:], epochs=30, batch_size=32, input_size=224)
