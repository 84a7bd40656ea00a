"""Studies of meta-training and of the shipped weights, each in its folder with its script, data and README."""
