"""The shortest way to generate: the bundled Fashion-MNIST model, one image per class, saved as a PNG."""
from var import VARPipeline
from var.images import grid

pipe = VARPipeline.from_pretrained("fashion-mnist")
out = pipe(class_labels=list(range(10)), cfg=1.5, top_k=900, top_p=0.96, seed=0)
grid(out.images, nrow=10, scale=3).save("generate_simple.png")
print("classes:", [pipe.class_names[i] for i in out.labels.tolist()])
print("wrote generate_simple.png")
