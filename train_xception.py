"""Train the Xception detector (`xception`). All options: python train_xception.py --help

Example: python train_xception.py --data-dir ../shared/datasets/dfdc-faces --epochs 30
"""
import sys

from training_engine import main

if __name__ == "__main__":
    main("xception", sys.argv[1:], epochs=30, batch_size=32, input_size=299)
