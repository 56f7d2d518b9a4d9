//! The gRPC codec of every Ferry service: prost messages, with buffers sized
//! by [`CODEC_BUFFER_SIZE`](crate::limits::CODEC_BUFFER_SIZE) instead of
//! tonic's default (most tunnel streams are idle and hold their buffers).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::limits::{CODEC_BUFFER_SIZE, CODEC_YIELD_THRESHOLD};

/// Prost encoding with Ferry's buffer sizes (named in `build.rs`).
#[derive(Debug, Clone)]
pub struct FerryCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for FerryCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(CODEC_BUFFER_SIZE, CODEC_YIELD_THRESHOLD)
}

impl<T, U> Codec for FerryCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
