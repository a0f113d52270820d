//! Group administration done by the bridge: removing a member and renaming, announced to the group as Delta Chat does.

use crate::coi::{ChatMessage, Group, GroupChange};
use crate::hub::outbound::{Outbound, QueueError};
use crate::store::{Chat, ChatKind, ChatRef, Origin, Store};

/// Removes `addr` from the group and tells everyone, `addr` included.
pub async fn remove_member(
    store: &dyn Store,
    outbound: &Outbound,
    chat: &Chat,
    addr: &str,
) -> Result<String, QueueError> {
    remove_member_for(Origin::Local, store, outbound, chat, addr).await
}

/// [`remove_member`] on behalf of `origin` (a bridge that saw it happen remotely).
pub async fn remove_member_for(
    origin: Origin,
    store: &dyn Store,
    outbound: &Outbound,
    chat: &Chat,
    addr: &str,
) -> Result<String, QueueError> {
    let msg = ChatMessage {
        group: Some(Group {
            id: chat.key.clone(),
            name: chat.name.clone(),
            change: Some(GroupChange::MemberRemoved(addr.to_owned())),
        }),
        text: format!("Member {addr} removed."),
        ..ChatMessage::default()
    };
    let id = outbound.queue_to_chat(origin, chat, msg).await?;
    store.update_members(chat.id, &[], &[addr.to_owned()]).await?;
    Ok(id)
}

/// Renames the group and tells everyone.
pub async fn rename(store: &dyn Store, outbound: &Outbound, chat: &Chat, new_name: &str) -> Result<String, QueueError> {
    rename_for(Origin::Local, store, outbound, chat, new_name).await
}

/// [`rename`] on behalf of `origin` (a bridge that saw it happen remotely).
pub async fn rename_for(
    origin: Origin,
    store: &dyn Store,
    outbound: &Outbound,
    chat: &Chat,
    new_name: &str,
) -> Result<String, QueueError> {
    let msg = ChatMessage {
        group: Some(Group {
            id: chat.key.clone(),
            name: new_name.to_owned(),
            change: Some(GroupChange::NameChanged { old: chat.name.clone() }),
        }),
        subject: Some(new_name.to_owned()),
        text: format!("Group name changed from \"{}\" to \"{new_name}\".", chat.name),
        ..ChatMessage::default()
    };
    let renamed = Chat { name: new_name.to_owned(), ..chat.clone() };
    let id = outbound.queue_to_chat(origin, &renamed, msg).await?;
    store.ensure_chat(&ChatRef { kind: ChatKind::Group, key: chat.key.clone(), name: new_name.to_owned() }).await?;
    Ok(id)
}

/// Gives the group a new description and tells everyone, on behalf of `origin`.
pub async fn describe_for(origin: Origin, outbound: &Outbound, chat: &Chat, text: &str) -> Result<String, QueueError> {
    let msg = ChatMessage {
        group: Some(Group {
            id: chat.key.clone(),
            name: chat.name.clone(),
            change: Some(GroupChange::DescriptionChanged { text: text.to_owned() }),
        }),
        text: "[Chat description changed. To see this and other new features, please update the app]".into(),
        ..ChatMessage::default()
    };
    outbound.queue_to_chat(origin, chat, msg).await
}

/// Gives the group a new image (or none) and tells everyone, on behalf of `origin`.
pub async fn set_avatar_for(
    origin: Origin,
    outbound: &Outbound,
    chat: &Chat,
    image: Option<Vec<u8>>,
) -> Result<String, QueueError> {
    let msg = ChatMessage {
        group: Some(Group {
            id: chat.key.clone(),
            name: chat.name.clone(),
            change: Some(GroupChange::AvatarChanged(image)),
        }),
        text: "Chat image changed.".into(),
        ..ChatMessage::default()
    };
    outbound.queue_to_chat(origin, chat, msg).await
}
