"""The pipeline: the stages ``dvc.yaml`` runs (prepare → train → evaluate → gate → serialise)
and what they are made of: the data, the estimator, its evaluation, the gate and its baseline,
the plots."""
