"""Recommenders composed from shared parts: news encoders × user encoders × scorers (``recommender.build``)."""
