"""The benchmark runner's Markdown table, from a result of the shape it measures."""

from benchmarks import run


def test_markdown_table_has_every_benchmark_and_ratio():
    result = {
        "machine": {"date": "2026-11-23", "cpu": "Test CPU", "cores_used": 2, "jax": "0.10.2",
                    "torch": "2.14.1"},
        "hog": {"batch": 64, "size": 224, "jax_targets_s": 0.05, "torch_targets_s": 0.5,
                "speedup_targets": 10.0},
        "vit_step": {"batch": 8, "gemm_peak_flops": 400e9, "jax_images_per_s": 2.0,
                     "torch_eager_images_per_s": 2.5, "torch_compile_images_per_s": 2.6,
                     "jax_over_torch_eager": 0.8, "jax_fraction_of_gemm_peak": 0.5,
                     "torch_eager_fraction_of_gemm_peak": 0.7,
                     "torch_compile_fraction_of_gemm_peak": 0.72},
    }  # fmt: skip
    table = run.markdown(result)
    assert "Test CPU (2 cores)" in table
    assert "| HOG targets, 64 x 224^2 (images/s) | 1280 | 128 | - | 10.00x |" in table
    assert "| 2.00 | 2.50 | 2.60 | 0.80x |" in table
    assert "(400 GFLOP/s) | 50% | 70% | 72% |" in table
