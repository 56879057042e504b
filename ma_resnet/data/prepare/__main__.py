"""python -m ma_resnet.data.prepare {camvid,cityscapes,vspw} ... (see ma_resnet.data.prepare)."""
import sys

from ma_resnet.data.prepare import main

sys.exit(main())
