#!/bin/bash
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
mkdir -p $OUT/clean $OUT/act
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $OUT/gpu.txt 2>&1
ACT_VARIANTS=tile,tile_rows128,tile_rows128_s2,tile_s2,tile_p2 timeout 150 python benchmarks/explore_w4a4_gpu.py --parts act --act-k 3584,4096 --act-m 4096,16384 --out $OUT/act > $OUT/act.log 2>&1; echo "rc $?" >> $OUT/act.log
timeout 300 python benchmarks/bench_gemm_gpu.py --flush clean --ms 4096 --only "dream-7b gate/up,dream-7b down,dream-7b k/v,stacked" --out $OUT/clean > $OUT/gemm_clean.log 2>&1; echo "rc $?" >> $OUT/gemm_clean.log
tail -n 4 $OUT/*.log
