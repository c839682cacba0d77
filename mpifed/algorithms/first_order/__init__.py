"""First-order baselines on the logistic problem: GD, DCGD, DIANA, ADIANA, FedAvg, FedAvgM, FedProx, SCAFFOLD,
FedAdam."""
