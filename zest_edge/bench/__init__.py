"""Measuring the method, kept apart from it (as torchvision keeps references/ apart from models/):

    profile.py         latency and peak memory of a training step per configuration and backend (+ report)
    step.py            one configuration's measurement in a fresh process (torch, ORT)
    memory.py          peak memory above a baseline (CPU high-water mark, CUDA allocator)
    isolation.py       fresh processes: a fork server, or a new interpreter per configuration
    machine.py         what the numbers ran on
    benchmark.py       accuracy of ZEST@k against full fine-tuning and the baselines, an lr per method
                       (+ benchmark_config.py, benchmark_stats.py, benchmark_results.py, benchmark_report.py)
    predictor_eval.py  held-out Kendall τ of the predictor against single metrics
"""
