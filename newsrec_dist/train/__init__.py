"""Training and evaluation of the recommenders: features, samplers, Lightning module, fast scoring, the stage."""
