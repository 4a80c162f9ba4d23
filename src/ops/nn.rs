//! Ops specific to training networks: dropout.

use crate::Tensor;

impl Tensor {
    /// Inverted dropout: in training, each element is zeroed with probability
    /// `p` and the survivors are scaled by `1/(1-p)`; otherwise the identity.
    ///
    /// The mask is a pure function of the calling thread's seed, the number
    /// of dropout calls made so far, and the element index (see
    /// [`crate::rng`]), so CPU and GPU runs of one seed drop the same
    /// elements.
    pub fn dropout(&self, p: f32, training: bool) -> Tensor {
        assert!((0.0..=1.0).contains(&p), "dropout: probability {p} is not in [0, 1]");
        if !training || p == 0.0 {
            return self.clone();
        }
        if p == 1.0 {
            return self * 0.0;
        }
        let key = crate::rng::next_dropout_key();
        // A captured step draws it again at each replay.
        crate::backend::gpu::capture::note_key(key);
        self.dropout_with_key(p, key)
    }

    /// Dropout with an explicit key: the same key gives the same mask.
    pub(crate) fn dropout_with_key(&self, p: f32, key: [u32; 2]) -> Tensor {
        let storage = self.device().backend().dropout(&self.read(), self.elem_count(), p, key);
        let out = Tensor::from_storage(storage, self.shape().clone(), self.device().clone());
        // The backward applies the same mask and scale to the gradient.
        out.record("dropout", &[self], move |c| vec![Some(c.grad.dropout_with_key(p, key))])
    }
}
