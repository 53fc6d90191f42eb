"""A latent ODE as YuliaRubanova/latent_ode writes it, at toy size (lib/diffeq_solver.py, lib/ode_func.py,
lib/encoder_decoder.py, lib/latent_ode.py, lib/base_models.py): ``DiffeqSolver`` solves first_point
[n_traj_samples, n_traj, latent_dim] (the inputs on axis 1) and permutes the result; the ODE-RNN encoder
takes Euler solves between observations; the latent solve is dopri5; classifier and reconstruction
heads. z0 is the posterior mean (no sampling at test time)."""
import torch
import torch.nn as nn
from torchdiffeq import odeint as odeint


# ---- lib/utils.py pieces
def init_network_weights(net, std=0.1):
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0, std=std)
            nn.init.constant_(m.bias, val=0)


def split_last_dim(data):
    last_dim = data.size()[-1]
    last_dim = last_dim // 2
    if len(data.size()) == 3:
        res = data[:, :, :last_dim], data[:, :, last_dim:]
    if len(data.size()) == 2:
        res = data[:, :last_dim], data[:, last_dim:]
    return res


def linspace_vector(start, end, n_points):
    size = torch.Size(start.size())
    if size == torch.Size([]):
        res = torch.linspace(start, end, n_points)
    else:
        res = torch.Tensor()
        for i in range(0, start.size(0)):
            res = torch.cat((res, torch.linspace(start[i], end[i], n_points)), 0)
        res = torch.t(res.reshape(start.size(0), n_points))
    return res


def create_net(n_inputs, n_outputs, n_layers=1, n_units=100, nonlinear=nn.Tanh):
    layers = [nn.Linear(n_inputs, n_units)]
    for i in range(n_layers):
        layers.append(nonlinear())
        layers.append(nn.Linear(n_units, n_units))
    layers.append(nonlinear())
    layers.append(nn.Linear(n_units, n_outputs))
    return nn.Sequential(*layers)


# ---- lib/ode_func.py
class ODEFunc(nn.Module):
    def __init__(self, input_dim, latent_dim, ode_func_net, device=torch.device("cpu")):
        super(ODEFunc, self).__init__()
        self.input_dim = input_dim
        self.device = device
        init_network_weights(ode_func_net)
        self.gradient_net = ode_func_net

    def forward(self, t_local, y, backwards=False):
        grad = self.get_ode_gradient_nn(t_local, y)
        if backwards:
            grad = -grad
        return grad

    def get_ode_gradient_nn(self, t_local, y):
        return self.gradient_net(y)


# ---- lib/diffeq_solver.py
class DiffeqSolver(nn.Module):
    def __init__(self, input_dim, ode_func, method, latents,
                 odeint_rtol=1e-4, odeint_atol=1e-5, device=torch.device("cpu")):
        super(DiffeqSolver, self).__init__()
        self.ode_method = method
        self.latents = latents
        self.device = device
        self.ode_func = ode_func
        self.odeint_rtol = odeint_rtol
        self.odeint_atol = odeint_atol

    def forward(self, first_point, time_steps_to_predict, backwards=False):
        n_traj_samples, n_traj = first_point.size()[0], first_point.size()[1]
        n_dims = first_point.size()[-1]

        pred_y = odeint(self.ode_func, first_point, time_steps_to_predict,
                        rtol=self.odeint_rtol, atol=self.odeint_atol, method=self.ode_method)
        pred_y = pred_y.permute(1, 2, 0, 3)

        assert (torch.mean(pred_y[:, :, 0, :] - first_point) < 0.001)
        assert (pred_y.size()[0] == n_traj_samples)
        assert (pred_y.size()[1] == n_traj)
        return pred_y


# ---- lib/encoder_decoder.py
class GRU_unit(nn.Module):
    def __init__(self, latent_dim, input_dim, n_units=100):
        super(GRU_unit, self).__init__()
        self.update_gate = nn.Sequential(nn.Linear(latent_dim * 2 + input_dim, n_units), nn.Tanh(),
                                         nn.Linear(n_units, latent_dim), nn.Sigmoid())
        init_network_weights(self.update_gate)
        self.reset_gate = nn.Sequential(nn.Linear(latent_dim * 2 + input_dim, n_units), nn.Tanh(),
                                        nn.Linear(n_units, latent_dim), nn.Sigmoid())
        init_network_weights(self.reset_gate)
        self.new_state_net = nn.Sequential(nn.Linear(latent_dim * 2 + input_dim, n_units), nn.Tanh(),
                                           nn.Linear(n_units, latent_dim * 2))
        init_network_weights(self.new_state_net)

    def forward(self, y_mean, y_std, x, masked_update=True):
        y_concat = torch.cat([y_mean, y_std, x], -1)
        update_gate = self.update_gate(y_concat)
        reset_gate = self.reset_gate(y_concat)
        concat = torch.cat([y_mean * reset_gate, y_std * reset_gate, x], -1)
        new_state, new_state_std = split_last_dim(self.new_state_net(concat))
        new_state_std = new_state_std.abs()
        new_y = (1 - update_gate) * new_state + update_gate * y_mean
        new_y_std = (1 - update_gate) * new_state_std + update_gate * y_std
        assert (not torch.isnan(new_y).any())
        if masked_update:
            n_data_dims = x.size(-1) // 2
            mask = x[:, :, n_data_dims:]
            mask = (torch.sum(mask, -1, keepdim=True) > 0).float()
            new_y = mask * new_y + (1 - mask) * y_mean
            new_y_std = mask * new_y_std + (1 - mask) * y_std
        new_y_std = new_y_std.abs()
        return new_y, new_y_std


class Encoder_z0_ODE_RNN(nn.Module):
    def __init__(self, latent_dim, input_dim, z0_diffeq_solver=None, z0_dim=None, n_gru_units=100,
                 device=torch.device("cpu")):
        super(Encoder_z0_ODE_RNN, self).__init__()
        self.z0_dim = latent_dim if z0_dim is None else z0_dim
        self.GRU_update = GRU_unit(latent_dim, input_dim, n_units=n_gru_units)
        self.z0_diffeq_solver = z0_diffeq_solver
        self.latent_dim = latent_dim
        self.input_dim = input_dim
        self.device = device
        self.transform_z0 = nn.Sequential(nn.Linear(latent_dim * 2, 16), nn.Tanh(),
                                          nn.Linear(16, self.z0_dim * 2))
        init_network_weights(self.transform_z0)

    def forward(self, data, time_steps, run_backwards=True, save_info=False):
        n_traj, n_tp, n_dims = data.size()
        if len(time_steps) == 1:
            prev_y = torch.zeros((1, n_traj, self.latent_dim)).to(self.device)
            prev_std = torch.zeros((1, n_traj, self.latent_dim)).to(self.device)
            xi = data[:, 0, :].unsqueeze(0)
            last_yi, last_yi_std = self.GRU_update(prev_y, prev_std, xi)
        else:
            last_yi, last_yi_std, _ = self.run_odernn(data, time_steps, run_backwards=run_backwards)
        means_z0 = last_yi.reshape(1, n_traj, self.latent_dim)
        std_z0 = last_yi_std.reshape(1, n_traj, self.latent_dim)
        mean_z0, std_z0 = split_last_dim(self.transform_z0(torch.cat((means_z0, std_z0), -1)))
        std_z0 = std_z0.abs()
        return mean_z0, std_z0

    def run_odernn(self, data, time_steps, run_backwards=True):
        n_traj, n_tp, n_dims = data.size()
        device = data.device
        prev_y = torch.zeros((1, n_traj, self.latent_dim)).to(device)
        prev_std = torch.zeros((1, n_traj, self.latent_dim)).to(device)
        prev_t, t_i = time_steps[-1] + 0.01, time_steps[-1]
        interval_length = time_steps[-1] - time_steps[0]
        minimum_step = interval_length / 50
        latent_ys = []
        time_points_iter = range(0, len(time_steps))
        if run_backwards:
            time_points_iter = reversed(time_points_iter)
        for i in time_points_iter:
            if (prev_t - t_i) < minimum_step:
                inc = self.z0_diffeq_solver.ode_func(prev_t, prev_y) * (t_i - prev_t)
                ode_sol = prev_y + inc
                ode_sol = torch.stack((prev_y, ode_sol), 2).to(device)
            else:
                n_intermediate_tp = max(2, ((prev_t - t_i) / minimum_step).int())
                time_points = linspace_vector(prev_t, t_i, n_intermediate_tp)
                ode_sol = self.z0_diffeq_solver(prev_y, time_points)
            yi_ode = ode_sol[:, :, -1, :]
            xi = data[:, i, :].unsqueeze(0)
            yi, yi_std = self.GRU_update(yi_ode, prev_std, xi)
            prev_y, prev_std = yi, yi_std
            prev_t, t_i = time_steps[i], time_steps[i - 1]
            latent_ys.append(yi)
        latent_ys = torch.stack(latent_ys, 1)
        return yi, yi_std, latent_ys


class Decoder(nn.Module):
    def __init__(self, latent_dim, input_dim):
        super(Decoder, self).__init__()
        decoder = nn.Sequential(nn.Linear(latent_dim, input_dim),)
        init_network_weights(decoder)
        self.decoder = decoder

    def forward(self, data):
        return self.decoder(data)


# ---- lib/latent_ode.py (get_reconstruction, with means instead of a sample of z0)
class LatentODE(nn.Module):
    def __init__(self, input_dim, latent_dim, encoder_z0, decoder, diffeq_solver,
                 use_binary_classif=False, classif_per_tp=False, n_labels=1, classify_from="z0",
                 return_="traj"):
        super().__init__()
        self.input_dim = input_dim
        self.latent_dim = latent_dim
        self.encoder_z0 = encoder_z0
        self.diffeq_solver = diffeq_solver
        self.decoder = decoder
        self.use_binary_classif = use_binary_classif
        self.classif_per_tp = classif_per_tp
        self.classify_from = classify_from
        self.return_ = return_
        if use_binary_classif:
            # lib/base_models.py: create_classifier(z0_dim, n_labels)
            self.classifier = nn.Sequential(nn.Linear(latent_dim, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                            nn.Linear(32, n_labels))
            init_network_weights(self.classifier, std=0.5)

    def get_reconstruction(self, time_steps_to_predict, truth, truth_time_steps, mask=None, n_traj_samples=1,
                           run_backwards=True):
        truth_w_mask = truth
        if mask is not None:
            truth_w_mask = torch.cat((truth, mask), -1)
        first_point_mu, first_point_std = self.encoder_z0(truth_w_mask, truth_time_steps,
                                                          run_backwards=run_backwards)
        means_z0 = first_point_mu.repeat(n_traj_samples, 1, 1)
        first_point_enc = means_z0                      # the mean of q(z0), no sampling at test time
        sol_y = self.diffeq_solver(first_point_enc, time_steps_to_predict)
        pred_x = self.decoder(sol_y)
        extra = {"first_point": (first_point_mu, first_point_std, first_point_enc), "latent_traj": sol_y}
        if self.use_binary_classif:
            if self.classify_from == "last":
                extra["label_predictions"] = self.classifier(sol_y[:, :, -1, :]).squeeze(-1)
            else:
                extra["label_predictions"] = self.classifier(first_point_enc).squeeze(-1)
        return pred_x, extra

    def forward(self, data, time_steps):
        # data: [n_traj, n_tp, 2 * input_dim] = observations and mask side by side (PhysioNet layout)
        truth, mask = data[..., :self.input_dim], data[..., self.input_dim:]
        pred_x, extra = self.get_reconstruction(time_steps, truth, time_steps, mask=mask)
        if self.use_binary_classif:
            return extra["label_predictions"][0]          # [n_traj, n_labels]
        if self.return_ == "raw":
            return pred_x                                  # [n_traj_samples=1, n_traj, n_tp, input_dim]
        return pred_x.mean(0)                              # [n_traj, n_tp, input_dim]


INPUT_DIM, LATENT, UNITS = 3, 6, 16


def _make(method="dopri5", **kw):
    torch.manual_seed(0)
    ode_func_net = create_net(LATENT, LATENT, n_layers=1, n_units=UNITS, nonlinear=nn.Tanh)
    gen_ode_func = ODEFunc(input_dim=INPUT_DIM, latent_dim=LATENT, ode_func_net=ode_func_net)
    diffeq_solver = DiffeqSolver(INPUT_DIM, gen_ode_func, method, LATENT, odeint_rtol=1e-3, odeint_atol=1e-4)
    enc_net = create_net(LATENT, LATENT, n_layers=1, n_units=UNITS, nonlinear=nn.Tanh)
    rec_ode_func = ODEFunc(input_dim=INPUT_DIM * 2, latent_dim=LATENT, ode_func_net=enc_net)
    z0_diffeq_solver = DiffeqSolver(INPUT_DIM * 2, rec_ode_func, "euler", LATENT, odeint_rtol=1e-3, odeint_atol=1e-4)
    encoder_z0 = Encoder_z0_ODE_RNN(LATENT, INPUT_DIM * 2, z0_diffeq_solver, z0_dim=LATENT, n_gru_units=UNITS)
    decoder = Decoder(LATENT, INPUT_DIM)
    m = LatentODE(INPUT_DIM, LATENT, encoder_z0, decoder, diffeq_solver, **kw)
    return m.eval()


def classifier_last():
    """PhysioNet-style classification from the last latent state (lib/base_models.py)."""
    return _make(use_binary_classif=True, n_labels=2, classify_from="last")


def regression_raw():
    """Reconstruction: pred_x as get_reconstruction returns it, [n_traj_samples=1, n_traj, n_tp, input_dim]."""
    return _make(return_="raw")


def make_data(n: int = 32, n_tp: int = 10, seed: int = 1):
    """Irregular series on one shared grid (the union of observation times, as the public PhysioNet collate
    makes it): values and mask side by side, [N, T, 2 * input_dim], and the grid t [T]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.sort(torch.rand(n_tp, generator=g))[0] * 2.0
    t[0] = 0.0
    freq = torch.rand(n, 1, INPUT_DIM, generator=g) * 3 + 1
    phase = torch.rand(n, 1, INPUT_DIM, generator=g) * 6
    vals = torch.sin(freq * t.view(1, n_tp, 1) + phase)
    mask = (torch.rand(n, n_tp, INPUT_DIM, generator=g) < 0.7).float()
    mask[:, 0] = 1
    return torch.cat([vals * mask, mask], -1), t
