"""Neural-network methods (``--model``): clients take K local mini-batch steps on per-client weights, as one batch.

First-order: FedAvg, FedAvgM, FedProx, SCAFFOLD, FedAdam (the logistic versions' server rules in
:mod:`mpifed.algorithms.first_order`). Curvature: LocalNewton-FOOF and FedPM-FOOF (FedPM eq. 11-12), FedRCO
(K-FAC with a look-ahead monitor) and FedRCO-ori.
"""

AGGREGATIONS = ("curvature", "mean")  # FedRCO: curvature-preserving blend (eq. 12-13) or plain averaging
