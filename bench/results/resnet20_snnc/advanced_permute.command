snnconv evaluate CHECKPOINT --data-dir DATA -T 4,8,16,32 --limit 1000 --neuron if --permute per-neuron --calibrate mse --snn-calibration advanced --calibration-images 256
