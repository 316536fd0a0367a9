"""LECOP's co-occurrence graphs: click sequences, keywords, Spark job, numpy reference, GraphFrames stats."""
