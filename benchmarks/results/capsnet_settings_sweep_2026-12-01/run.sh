#!/bin/bash
cd /work/main
export CAPS_ZOO_DATA=/work/shared/data PYTHONPATH=.
B="python benchmarks/benchmark_capsnet.py --models capsnet --precisions float32 --infer-repeats 3"
$B --json /tmp/sweep/default.json > /tmp/sweep/default.txt 2>&1
$B --routing-stop-gradient on --json /tmp/sweep/stopgrad.json > /tmp/sweep/stopgrad.txt 2>&1
TF_ENABLE_ONEDNN_OPTS=0 $B --json /tmp/sweep/onednn0.json > /tmp/sweep/onednn0.txt 2>&1
TF_NUM_INTEROP_THREADS=1 $B --json /tmp/sweep/inter1.json > /tmp/sweep/inter1.txt 2>&1
TF_NUM_INTRAOP_THREADS=1 $B --json /tmp/sweep/intra1.json > /tmp/sweep/intra1.txt 2>&1
OMP_NUM_THREADS=2 TF_NUM_INTRAOP_THREADS=2 TF_NUM_INTEROP_THREADS=1 $B --json /tmp/sweep/omp2_intra2_inter1.json > /tmp/sweep/omp2.txt 2>&1
$B --json /tmp/sweep/default2.json > /tmp/sweep/default2.txt 2>&1
$B --models deep_capsnet --routing-stop-gradient on --json /tmp/sweep/deep_stopgrad.json > /tmp/sweep/deep_stopgrad.txt 2>&1
$B --models deep_capsnet --json /tmp/sweep/deep_default.json > /tmp/sweep/deep_default.txt 2>&1
echo ALLDONE > /tmp/sweep/done
