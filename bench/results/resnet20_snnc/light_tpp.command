snnconv evaluate CHECKPOINT --data-dir DATA -T 4,8,16,32 --limit 1000 --neuron tpp --calibrate mse --snn-calibration light --calibration-images 256
