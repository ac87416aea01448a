"""Train the EfficientNet-B3 detector (`efficientnet`). All options: python train_efficientnet.py --help

Example: python train_efficientnet.py --data-dir ../shared/datasets/dfdc-faces --epochs 30
"""
import sys

from training_engine import main

if __name__ == "__main__":
    main("efficientnet", sys.argv[1:], epochs=30, batch_size=32, input_size=300)
