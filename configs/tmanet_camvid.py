r"""TMANet on CamVid, the authors' recipe (`tmanet_r50-d8_640x640_80k_camvid_video.py`), on the SegNet release.

    python train.py --config=configs/tmanet_camvid.py --workdir=runs/tmanet_camvid
    python eval.py --workdir=runs/tmanet_camvid

Model: the authors' TMANet R50-D8 (`models.build.tmanet_r50_d8`) with T = 4 memory frames, key 64 / value
256, align_corners False (the CamVid config keeps the base config's), auxiliary FCN on stage 3 (weight 0.4).
Training: mmseg's schedule_80k (SGD 0.01, momentum 0.9, weight decay 5e-4, poly to 1e-4 over 80 000
iterations); frames scaled by 0.5-2.0 around 960x720, 640x640 crops, flips, photometric jitter, ImageNet
normalisation.

Initialisation: mmcv's ImageNet ResNetV1c-50, as the authors (`init_from='mmcv_resnet50_v1c'`, a catalogue entry
downloaded, checked and converted on first use into $MA_RESNET_CACHE, docs/weights.md); `--config.init_from=''`
trains from scratch.

What differs with the data here (`../shared/data/camvid`, the SegNet release):
- Memory frames. The authors extract every frame of CamVid's 30 fps videos and give the model frames t-4 ..
  t-1 (33 ms apart) before each labelled frame t, in training and in testing. `data.camvid.video_frames='auto'`
  reads them from `<root>/video_frames`, written once by
      python -m ma_resnet.data.prepare camvid --videos DIR_WITH_THE_MXF_AND_AVI_FILES --camvid-root ROOT
  (K = 4 frames before each labelled one; docs/data.md): a clip of 5 consecutive video frames with the labelled
  frame last (`labelled_last`) is then exactly the authors' sample, and evaluation streams the val video frames
  7955 .. 8159 (memory carried through the unlabelled ones, only the labelled ones scored). The console says
  which frames are used. Without the prepared folder the SegNet release holds only the labelled frames (train: 1
  per second; val: 15 per second), and the memory frames are the 4 previous *labelled* frames (about 4 s of
  video in train, 0.27 s in val): clips of 5 consecutive labelled frames. Either way the loss counts only frames
  whose window holds 4 real earlier frames (`loss_on_warmup_frames=False`: the first 4 frames of a sequence only
  fill the memory, as in the authors' data where every labelled frame has 4 real predecessors).
- Classes: the authors' CamVid has 12 classes (class 0 = void is trained); the release here has 11, void
  ignored (as in the paper).
- Frames are 480x360 (the authors upsample to 960x720 before scaling); scale 1.0-4.0 of 480x360 is the same
  range, for 4x the compute and no more detail; 640x640 crops of 720x960-sized frames.
- Evaluation as the authors (`test_cfg` mode 'slide', docs/protocols.md): frames at 720x960, 640x640 windows with
  stride 512x512 (2x2 windows), each window position a lane with its own memory (the authors crop the memory
  frames at the same window), overlapping logits averaged; no flip, one scale. The paper's 76.5 is on the CamVid
  test split with TMANet's 232-frame list (`data.camvid.frame_list='tmanet'`: the 233 SegNet test frames without
  Seq05VD_f00000): `python eval.py --workdir=runs/tmanet_camvid --split=test` once `<root>/test/` and
  `<root>/testannot/` exist (validation during training uses val).
- Batch 8 clips (2 per GPU in the config, GPU count not in the repository).
"""
from ma_resnet.data.pipeline import IMAGENET_MEAN, IMAGENET_STD
from ma_resnet.models.build import tmanet_r50_d8
from ma_resnet.train_config import base_config, mmseg_schedule

MEMORY_LENGTH = 4


def get_config():
  config = base_config('camvid')
  config.init_from = 'mmcv_resnet50_v1c'  # the authors' ImageNet ResNetV1c-50 (docs/weights.md)
  tmanet_r50_d8(config.model, memory_length=MEMORY_LENGTH, align_corners=False)
  config.aux_loss_weight = 0.4
  config.loss_on_warmup_frames = False
  mmseg_schedule(config, num_steps=80_000)
  data = config.data
  data.clip_length = MEMORY_LENGTH + 1
  data.labelled_last = True
  data.camvid.video_frames = 'auto'  # the 30 fps frames before each labelled one, when prepared
  data.crop_size = (640, 640)
  data.scale_range = (1.0, 4.0)
  data.eval_size = (720, 960)
  data.camvid.frame_list = 'tmanet'  # TMANet's lists: the 232-frame test list
  config.eval_mode = 'slide'
  config.eval_crop = (640, 640)
  config.eval_stride = (512, 512)
  data.flip = True
  data.jitter = 0.1
  data.mean, data.std = IMAGENET_MEAN, IMAGENET_STD
  data.worker_count = 2
  config.batch_size = 8
  config.log_every = 50
  config.eval_every = 8_000
  config.eval_batch_size = 1
  config.checkpoint_every = 1_000
  config.keep_checkpoints = 3
  return config
