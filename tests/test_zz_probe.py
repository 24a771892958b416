import torch, pytest
from tests.test_big_models import load, run, bnb, PROMPT

def test_probe(converted_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM
    folder = converted_checkpoint("CodeLlama-13b-Instruct", dtype="bfloat16", n_layers=2, vocab=None)
    model = load(folder, quantization_config=bnb(4))
    tokens, logits = run(model)
    model.save_pretrained(tmp_path)
    re = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    a, l1 = run(re)
    print("reload vs orig", (l1 - logits).abs().max())
    sd = re.state_dict()
    a, l2 = run(re)
    print("after state_dict", (l2 - l1).abs().max())
    a, l3 = run(re)
    print("again", (l3 - l2).abs().max())
    a, l4 = run(model)
    print("orig after save", (l4 - logits).abs().max())
