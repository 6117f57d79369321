"""Tasks and the dataset: discovery, feature pairs and the split (tasks), where tasks come from
(config), the dataset validator (check), per-task test environments (task_env)."""
