"""Invalid: transform_fn together with input_fn (the toolkit refuses this)."""


def transform_fn(model, body, content_type, accept):
    return body


def input_fn(body, content_type):
    return body
