"""Run plumbing shared by train, evaluate and export (below all three, so none reaches up):
``config`` (the ml_collections schema and validation), ``cli`` (absl flag parsing, logging),
``checkpoint`` (Orbax train state + run metadata), ``model_setup`` (tokenizer + model for a run),
``sources`` (the configured data splits as records)."""
