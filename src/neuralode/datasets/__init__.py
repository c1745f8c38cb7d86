"""Data the tasks train on: MNIST (IDX files, checksummed download), the toy 2-D densities of the
CNF and flow tasks, scikit-learn's 8x8 digits (flow task), the paper's irregularly sampled spirals
(latent ODEs) and the demo's spiral ODE.

Each module is imported on its own (``from neuralode.datasets.mnist import mnist_dataset``); this
package imports nothing, so ``import neuralode`` stays cheap.
"""
