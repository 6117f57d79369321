"""LoRA training: the students registry, the embedded trainer and run contract (train), verl
(config and launch in verl; verl_pipes and verl_cpu_platform run inside verl's venv) and the
adapter directories they publish (adapters)."""
