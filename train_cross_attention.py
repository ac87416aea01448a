"""Train the Cross-Attention network detector (`cross_attention`). All options: python train_cross_attention.py --help

Example: python train_cross_attention.py --data-dir ../shared/datasets/dfdc-faces --epochs 30
"""
import sys

from training_engine import main

if __name__ == "__main__":
    main("cross_attention", sys.argv[1:], epochs=30, batch_size=32, input_size=224)
