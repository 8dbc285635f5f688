"""What a training run does around the model: checkpoints, the run directory and its attempts,
preemption, the refit beside the selection, outputs, console and TensorBoard monitor.
The loop itself reads top to bottom in distrec/train.py. Imports: everything below it
(config, data, distributed, nn, eval, serve, tasks).
"""
