//! Chats to a target whose template thinks aloud: whether the engine may serve them, and the
//! per-request half of the split ([`crate::backend::reasoning`] has the target's parser): the
//! generation prompt (rendered with and without it, as llama.cpp derives it) and the request's
//! `reasoning_format`.

use serde_json::{json, Value};

use super::pairing::Pairing;
use super::probe::PairingInfo;
use super::request::{ForwardReason, PromptInput, ReasoningSplit};
use crate::backend::reasoning::{generation_prompt, ReasoningFormat};
use crate::backend::{BackendError, TokenId};

impl Pairing {
    /// Why a chat must go to the target for its reasoning split: the probe found a template the
    /// engine cannot split, or the conversation ends with an assistant message, which the
    /// target continues with a generation prompt of that message's own.
    pub(super) fn reasoning_forward(
        info: &PairingInfo,
        prompt: &PromptInput,
    ) -> Option<ForwardReason> {
        let PromptInput::Chat { messages, .. } = prompt else {
            return None;
        };
        match &info.chat_reasoning {
            Some(Err(_)) => Some(ForwardReason::Reasoning),
            Some(Ok(_)) if last_role(messages) == Some("assistant") => {
                Some(ForwardReason::Reasoning)
            }
            _ => None,
        }
    }

    /// The prompt's token ids, and for a chat to a thinking template how its answer is split:
    /// the generation prompt is what rendering with it adds to rendering without it (both by
    /// the target, concurrently).
    pub(super) async fn tokenize_for_split(
        &self,
        prompt: &PromptInput,
        info: &PairingInfo,
    ) -> Result<(Vec<TokenId>, Option<ReasoningSplit>), BackendError> {
        let (
            PromptInput::Chat {
                messages,
                template_kwargs,
                reasoning_format,
            },
            Some(Ok(syntax)),
            Some(target),
        ) = (prompt, &info.chat_reasoning, self.target.as_llamacpp())
        else {
            return Ok((self.tokenize_prompt(prompt).await?, None));
        };
        let mut body = json!({ "messages": messages });
        if let Some(kwargs) = template_kwargs {
            body["chat_template_kwargs"] = kwargs.clone();
        }
        let mut bare = body.clone();
        bare["add_generation_prompt"] = json!(false);
        let (with, without) =
            tokio::try_join!(target.render_chat(&body), target.render_chat(&bare))?;
        let tokens = target.tokenize(&with, true).await?;
        let split = ReasoningSplit {
            syntax: syntax.clone(),
            pending: syntax
                .pending(generation_prompt(&with, &without))
                .to_string(),
            extract: match reasoning_format {
                Some(format) => *format == ReasoningFormat::Extract,
                None => syntax.extract_by_default,
            },
        };
        Ok((tokens, Some(split)))
    }
}

fn last_role(messages: &Value) -> Option<&str> {
    messages.as_array()?.last()?.get("role")?.as_str()
}
