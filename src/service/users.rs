//! Changes to users that other parts of the service must hear of: every instance forgets
//! its cached copy of a changed or deleted user at once.

use crate::db::{StoreResult, User, UserPatch};
use crate::state::AppState;

/// Changes a user; `None` when the user is gone. Every instance forgets both the old and the
/// new username, so a renamed or deactivated user's tokens are judged on the new row.
pub async fn update(
    state: &AppState,
    target: &User,
    patch: &UserPatch,
) -> StoreResult<Option<User>> {
    let user = state.store.update_user(target.id, patch).await?;
    if let Some(user) = &user {
        state.hub.users.user_changed(&target.username);
        state.hub.users.user_changed(&user.username);
    }
    Ok(user)
}

/// Deletes a user with everything they own; `false` when the user was already gone.
pub async fn delete(state: &AppState, user: &User) -> StoreResult<bool> {
    if !state.store.delete_user(user.id).await? {
        return Ok(false);
    }
    state.hub.users.user_changed(&user.username);
    tracing::info!(user_id = user.id, "deleted user");
    state.analytics.user_deleted(user);
    Ok(true)
}
