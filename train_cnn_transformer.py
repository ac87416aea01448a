"""Train the CNN-Transformer hybrid detector (`cnn_transformer`). All options: python train_cnn_transformer.py --help

Example: python train_cnn_transformer.py --data-dir ../shared/datasets/dfdc-faces --epochs 30
"""
import sys

from training_engine import main

if __name__ == "__main__":
    main("cnn_transformer", sys.argv[1:], epochs=30, batch_size=32, input_size=224)
