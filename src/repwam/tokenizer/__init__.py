"""repwam.tokenizer"""
