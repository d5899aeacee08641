"""jaxsched.tuning: an AutoTVM-style tuner with learned cost models and a persistent database.

Submodules load lazily, so kernels can consult ``jaxsched.tuning.database.lookup_best_config``
without importing the tuner (cost models, xgboost, flax).
"""

from importlib import import_module as _import_module

_EXPORTS = {
  # space
  "SearchSpace": "space",
  "Task": "space",
  # database
  "Record": "database",
  "TuningDatabase": "database",
  "TuningDatabaseError": "database",
  "current_target": "database",
  "default_db_path": "database",
  "lookup_best_config": "database",
  "workload_key": "database",
  # measure
  "MeasureResult": "measure",
  "Measurer": "measure",
  "retain_freed_memory": "measure",
  # cost models
  "COST_MODELS": "cost_models",
  "BootstrapEnsemble": "cost_models",
  "CostModel": "cost_models",
  "MLPCostModel": "cost_models",
  "Tree": "cost_models",
  "TreeBatch": "cost_models",
  "TreeGRUCostModel": "cost_models",
  "TransferCostModel": "cost_models",
  "XGBCostModel": "cost_models",
  "make_cost_model": "cost_models",
  "pad_trees": "cost_models",
  "tree_levels": "cost_models",
  "register_cost_model": "cost_models",
  # features
  "loop_nest_tree": "features",
  "loop_nest_vector": "features",
  # search
  "METHODS": "search",
  "GATuner": "search",
  "GridTuner": "search",
  "ModelTuner": "search",
  "RandomTuner": "search",
  "TuneResult": "search",
  "Tuner": "search",
  "diverse_top_k": "search",
  "make_tuner": "search",
  "simulated_annealing": "search",
  "tune": "search",
  # plot
  "plot_tuning_curves": "plot",
  # pipeline schedules
  "PipelineSpace": "pipeline_space",
  "apply_schedule": "pipeline_space",
  "make_tuned": "pipeline_space",
  "schedule_space": "pipeline_space",
  "pipeline_task": "pipeline_space",
  "pipeline_workload": "pipeline_space",
  "tuned_pipeline": "pipeline_space",
  "tuned_schedule": "pipeline_space",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name in _EXPORTS:
    return getattr(_import_module(f"jaxsched.tuning.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module 'jaxsched.tuning' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
