"""The text-to-image tab: prompt, sampler, steps, guidance, size, seed -> images + metadata."""
from __future__ import annotations

import gradio as gr

from diffdemo.tasks import TextToImageRequest, text_to_image
from diffdemo.tasks.settings import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS
from diffdemo.ui.runner import Runner, named
from diffdemo.ui.settings import guidance_slider, run_and_stop, sampler_dropdown, steps_slider

EXAMPLES = [
    "a large red star on a blue background",
    "a small yellow circle in the top left corner on a black background",
    "a big green heart on a white background",
    "a purple triangle at the bottom on an orange background",
    "a large white square on a gray background",
    "a tiny pink star on the right",
]
# Shown when the model knows every word of them (a model without a vocabulary file, CLIP's, knows them all).
EMOJI_EXAMPLES = [
    "a panda",
    "a small rocket in the top left corner on a blue background",
    "a large pizza on a black background",
    "an automobile at the bottom on a yellow background",
]


def build_text_to_image_tab(runner: Runner, gpu_group: str) -> dict:
    """Builds the tab; returns the components other tabs connect to (gallery, selected index, send button)."""
    native, vocabulary = runner.models.native_size, getattr(runner.models, "vocabulary", None)
    with gr.Row():
        with gr.Column(scale=1):
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder=EXAMPLES[0], value=EXAMPLES[0])
            negative_prompt = gr.Textbox(label="Negative prompt", value="",
                                         placeholder="what to steer away from, e.g. 'red'")
            with gr.Row():
                sampler, steps = sampler_dropdown(), steps_slider()
            guidance_scale = guidance_slider(
                info="How strongly to follow the prompt: output = uncond + w·(cond − uncond)")
            with gr.Row():
                width = gr.Slider(64, 1024, value=native, step=8, label="Width")
                height = gr.Slider(64, 1024, value=native, step=8, label="Height")
            with gr.Row():
                seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
                num_images = gr.Slider(1, 8, value=1, step=1, label="Images")
            generate, stop = run_and_stop("Generate")
            gr.Examples(known_examples(vocabulary), inputs=[prompt], label="Prompts the built-in model knows")
            build_vocabulary_list(vocabulary, prompt)
        with gr.Column(scale=1):
            gallery = gr.Gallery(label="Images", format="png", columns=2, height="auto", object_fit="contain",
                                 interactive=False)  # an output: no upload zone before the first run
            unknown = gr.Markdown(visible=False, elem_id="unknown-words")
            used_seed = gr.Textbox(label="Seed used", interactive=False)
            send_to_inpainting = gr.Button("Send to inpainting", size="sm")
            selected = gr.State(0)  # the gallery image last clicked; what "Send to inpainting" sends
            with gr.Accordion("Generation data (also stored in each PNG)", open=False):
                metadata = gr.JSON(label="Metadata")

    run = text_to_image_handler(runner)
    inputs = [prompt, negative_prompt, sampler, steps, guidance_scale, width, height, seed, num_images]
    outputs = [gallery, metadata, used_seed]
    # preprocess=False: numbers and text reach the task as sent, so it answers wrong types and bounds itself
    event = generate.click(run, inputs, outputs, api_name="text_to_image", concurrency_id=gpu_group,
                           preprocess=False)
    submitted = prompt.submit(run, inputs, outputs, api_visibility="private", concurrency_id=gpu_group,
                              preprocess=False)
    stop.click(runner.stop, None, None, cancels=[event, submitted], api_visibility="private", queue=False)
    for done in (event, submitted):
        done.success(unknown_words_note, metadata, unknown, api_visibility="private", queue=False)
    gallery.select(_selected_index, None, selected, api_visibility="private", queue=False)
    return {"gallery": gallery, "selected": selected, "send_to_inpainting": send_to_inpainting}


def text_to_image_handler(runner: Runner):
    native = runner.models.native_size

    def text_to_image_event(prompt: str, negative_prompt: str = "", sampler: str = DEFAULT_SAMPLER,
                            steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE,
                            width: int = native, height: int = native, seed: int = -1, num_images: int = 1,
                            request: gr.Request = None, progress=gr.Progress()):
        task_request = TextToImageRequest(prompt=prompt, negative_prompt=negative_prompt, sampler=sampler,
                                          steps=steps, guidance_scale=guidance_scale, width=width, height=height,
                                          seed=seed, num_images=num_images)
        result = runner.run(text_to_image, task_request, request, progress)
        paths = runner.save_images(result)
        seeds = result.metadata["seeds"]
        return [(p, f"seed {s}") for p, s in zip(paths, seeds)], result.metadata, ", ".join(map(str, seeds))

    return named("text_to_image", text_to_image_event)


def known_examples(vocabulary) -> list[str]:
    """The example prompts whose every word the model knows (all of them for a model without a vocabulary)."""
    examples = EXAMPLES + EMOJI_EXAMPLES
    return examples if vocabulary is None else [e for e in examples if not vocabulary.unknown_words(e)]


def build_vocabulary_list(vocabulary, prompt: gr.Textbox) -> None:
    """What the model knows (from its vocabulary file): a searchable list of subjects that fills the prompt, and
    the words by kind. Nothing for a model without one."""
    if vocabulary is None:
        return
    with gr.Accordion(f"What this model knows: {vocabulary.subject_count} subjects", open=False):
        subjects = sorted({name for names in vocabulary.subjects.values() for name in names})
        pick = gr.Dropdown(subjects, value=None, filterable=True, label="Find a subject",
                           info="Type to search; picking one puts it in the prompt")
        gr.Markdown(vocabulary.markdown())
    pick.input(lambda subject: subject or gr.skip(), pick, prompt, api_visibility="private", queue=False)


def unknown_words_note(metadata: dict | None):
    """The note under the images: the prompt's words the model does not know, or nothing."""
    words = (metadata or {}).get("unknown_words") or []
    text = f"**unknown words: {', '.join(words)}** (this model never saw them in training, so it ignores them)"
    return gr.Markdown(text if words else "", visible=bool(words))


def _selected_index(event: gr.SelectData) -> int:
    return event.index
