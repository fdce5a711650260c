"""Checks before training: input channels (first conv / linear by execution order) and detection class counts."""

import pytest
import torch
from torch import nn

from hintdistill.checks import check_class_counts, check_input_channels, detector_classes, first_input_layer
from hintdistill.errors import ConfigError
from hintdistill.models import build_model


def test_cnn_default_one_channel_on_rgb_images_names_model_and_data():
    model = build_model("cnn", {"widths": [4, 8]})
    with pytest.raises(ConfigError) as info:
        check_input_channels(model, (3, 32, 32), "student", "data 'image_folder'")
    assert str(info.value) == (
        "the student (SmallCNN) expects 1-channel images at its first layer 'features.stage1.0.0' but data "
        "'image_folder' gives 3 channels (3x32x32): set in_channels: 3 in the student's args (cnn, resnet* and "
        "yolo take it), or use a model built for 3-channel images.")
    check_input_channels(build_model("cnn", {"widths": [4, 8], "in_channels": 3}), (3, 32, 32), "student")


def test_mlp_on_larger_images_names_the_flattened_size():
    model = build_model("mlp", {"hidden": [8]})
    with pytest.raises(ConfigError, match=r"the teacher \(MLP\) expects 784 input values at its first layer "
                                          r"'hidden.fc1.0' but the data gives 3072 \(3x32x32 images\): set "
                                          r"in_features: 3072"):
        check_input_channels(model, (3, 32, 32), "teacher")
    check_input_channels(model, (1, 28, 28), "teacher")


def test_first_layer_is_found_by_execution_not_definition_order():
    class Late(nn.Module):  # the classifier is defined first but runs last
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 2)
            self.conv = nn.Conv2d(2, 5, 3)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    name, layer, received = first_input_layer(Late(), (2, 8, 8))
    assert name == "conv" and tuple(received) == (1, 2, 8, 8)
    check_input_channels(Late(), (2, 8, 8), "student")
    with pytest.raises(ConfigError, match="expects 2-channel images at its first layer 'conv' but the data gives 4"):
        check_input_channels(Late(), (4, 8, 8), "student")


def test_models_without_conv_or_linear_or_that_fail_early_are_left_to_the_next_check():
    assert first_input_layer(nn.Identity(), (3, 4, 4)) is None
    assert first_input_layer(nn.Sequential(nn.Unflatten(1, (7, 7)), nn.Conv2d(7, 1, 1)), (3, 4, 4)) is None
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Dropout())
    model.train()
    check_input_channels(model, (3, 4, 4), "student")
    assert model.training and not model[0]._forward_pre_hooks  # mode restored, hooks removed


def test_detection_class_counts_of_teacher_student_and_data():
    torch.manual_seed(0)
    three = build_model("yolo", {"num_classes": 3, "size": "n"})
    four = build_model("yolo", {"num_classes": 4, "size": "n"})
    assert detector_classes(three) == 3 and detector_classes(nn.Linear(2, 2)) is None
    check_class_counts(three, three, 3)
    with pytest.raises(ConfigError, match="the teacher detects 4 classes but the data has 3: remove num_classes "
                                          "from the teacher's args"):
        check_class_counts(four, three, 3)
    with pytest.raises(ConfigError, match="the student detects 4 classes but the data has 3"):
        check_class_counts(three, four, 3, "teacher_1")
    head_only = nn.Module()
    head_only.head = nn.Module()
    head_only.head.num_outputs = 5 + 7
    assert detector_classes(head_only) == 7


def test_check_model_fits_data_compares_a_detection_teacher_with_the_student():
    from types import SimpleNamespace

    from hintdistill.checks import check_model_fits_data

    torch.manual_seed(0)
    three, four = (build_model("yolo", {"num_classes": n, "size": "n"}) for n in (3, 4))
    data = SimpleNamespace(kind="detection", input_shape=(3, 32, 32), num_classes=3)
    assert check_model_fits_data(three, data, "student", "voc") is three
    with pytest.raises(ConfigError, match="the student detects 4 classes but the data has 3"):
        check_model_fits_data(three, data, "teacher", "voc", four)
    with pytest.raises(ConfigError, match="expects 3-channel images .* but data 'voc' gives 1 channels"):
        check_model_fits_data(three, SimpleNamespace(kind="detection", input_shape=(1, 32, 32), num_classes=3),
                              "teacher", "voc")
