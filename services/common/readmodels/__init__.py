"""Read models shared by the projector (which writes them) and the API (which reads them,
and folds newer commits onto them when the projector is behind)."""
