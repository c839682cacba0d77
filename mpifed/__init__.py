"""mpifed: second-order federated optimization simulated over MPI."""

__version__ = "0.1.0"
