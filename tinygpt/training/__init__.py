"""Training with the HF Trainer (`tinygpt train`, `python -m tinygpt.training`, `python train.py`): arguments and
presets, the corpus, the run folder, Muon, the report and the synthetic chat exam. tinygpt.training.trainer.main
is the command line."""
